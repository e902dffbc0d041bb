"""Built-in data set readers; importing this package registers them."""

from edgereid.data.readers import cuhk03, folder, market, msmt17, vehicle, veri  # noqa: F401
from edgereid.data.readers._common import DatasetWarning

__all__ = ["DatasetWarning"]
