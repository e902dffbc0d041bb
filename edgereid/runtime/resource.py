"""What runners, CUDA devices and embedders share: they hold sessions, streams or device memory, which ``close()``
releases and a ``with`` block closes on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class Closable:
    def close(self) -> None:
        """Release what this object holds (nothing by default: some backends free everything with the object)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
