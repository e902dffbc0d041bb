#!/usr/bin/env bash
# Build a TensorRT engine for every precision of an edgereid bundle on the device that will run it, then verify
# each engine's accuracy against the bundle's FP32 ONNX model when query/gallery data is given.
#
# Engines are specific to the GPU, the TensorRT version and (for DLA) the DLA core they were built on: build
# them here, on the Jetson, never on the workstation that exported the bundle. See deploy/README.md.
set -euo pipefail

readonly PROG="${0##*/}"
readonly ALL_PRECISIONS=(fp32 fp16 int8)

usage() {
    cat <<EOF
usage: $PROG [options] BUNDLE

Build engine.<precision>.plan for each precision in BUNDLE (edgereid build), then, with --data, check each
engine's mAP against the FP32 ONNX reference (edgereid verify --backend tensorrt).

options:
  -p, --precision P       fp32, fp16 or int8; repeatable (default: every precision the bundle has)
  -b, --batch MIN:OPT:MAX batch range of the engines, tuned for OPT; N alone fixes it
                          (default: edgereid build's, 1:8:32)
  -w, --workspace MB      TensorRT builder workspace limit in MiB (lower it when the build runs out of memory)
  -c, --timing-cache FILE TensorRT timing cache, reused across builds
                          (default: BUNDLE.timing-cache, beside the bundle, so a re-export keeps it)
  -d, --dla-core N        build for DLA core N (Orin: 0 or 1; FP16 and INT8 only, FP32 is skipped;
                          DLA has no dynamic shapes, so give a fixed --batch N)
      --version-compatible
                          build version-compatible engines (run on later TensorRT versions, a little slower)
      --data ROOT         query/gallery data set root: verify every engine after building it
      --max-images N      verify on the first N query and N gallery images only
      --verify-dir DIR    where verification JSON goes (default: beside the bundle)
  -n, --dry-run           print the commands instead of running them (no TensorRT needed)
  -h, --help              show this help and exit

environment:
  EDGEREID  the edgereid command (default: edgereid on PATH), e.g. "python3 -m edgereid"
  PYTHON    the Python that runs edgereid, used to check for TensorRT (default: the one beside edgereid,
            else python3)

exit status: 0 when every engine was built (and verified, with --data); 1 when a verification failed;
2 on a usage error or a missing prerequisite.
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    exit "${2:-2}"
}

note() {
    printf '%s: %s\n' "$PROG" "$1" >&2
}

# Prints a command (shell-quoted) before running it, or only prints it under --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "$dry_run" -eq 0 ]]; then
        "$@"
    fi
}

need_value() {
    if [[ $# -lt 2 || -z "$2" || "$2" == -* ]]; then
        die "option $1 needs a value (see $PROG --help)"
    fi
}

precisions=()
batch=""
workspace=""
timing_cache=""
dla_core=""
version_compatible=0
data_root=""
max_images=""
verify_dir=""
dry_run=0
bundle=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        -p | --precision)
            need_value "$@"
            case "$2" in
                fp32 | fp16 | int8) precisions+=("$2") ;;
                *) die "--precision $2: expected fp32, fp16 or int8" ;;
            esac
            shift 2
            ;;
        -b | --batch)
            need_value "$@"
            [[ "$2" =~ ^[1-9][0-9]*(:[1-9][0-9]*:[1-9][0-9]*)?$ ]] \
                || die "--batch $2: expected MIN:OPT:MAX (e.g. 1:8:32) or a fixed size N"
            batch="$2"
            shift 2
            ;;
        -w | --workspace)
            need_value "$@"
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--workspace $2: expected a size in MiB, e.g. 1024"
            workspace="$2"
            shift 2
            ;;
        -c | --timing-cache)
            need_value "$@"
            timing_cache="$2"
            shift 2
            ;;
        -d | --dla-core)
            need_value "$@"
            [[ "$2" =~ ^[0-9]+$ ]] || die "--dla-core $2: expected a DLA core number (0 or 1 on Orin)"
            dla_core="$2"
            shift 2
            ;;
        --version-compatible)
            version_compatible=1
            shift
            ;;
        --data)
            need_value "$@"
            data_root="$2"
            shift 2
            ;;
        --max-images)
            need_value "$@"
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--max-images $2: expected a positive integer"
            max_images="$2"
            shift 2
            ;;
        --verify-dir)
            need_value "$@"
            verify_dir="$2"
            shift 2
            ;;
        -n | --dry-run)
            dry_run=1
            shift
            ;;
        --)
            shift
            break
            ;;
        -*)
            die "unknown option $1 (see $PROG --help)"
            ;;
        *)
            [[ -z "$bundle" ]] || die "one BUNDLE only; got '$bundle' and '$1'"
            bundle="$1"
            shift
            ;;
    esac
done
if [[ $# -gt 0 ]]; then
    [[ -z "$bundle" && $# -eq 1 ]] || die "one BUNDLE only"
    bundle="$1"
fi
if [[ -z "$bundle" ]]; then
    usage >&2
    exit 2
fi

bundle="${bundle%/}"
[[ -f "$bundle/manifest.json" ]] || die "'$bundle' is not an edgereid bundle (no manifest.json); export one with: edgereid export CHECKPOINT --out DIR --fp16 --int8"
if [[ -n "$data_root" && ! -d "$data_root" ]]; then
    die "--data '$data_root' is not a directory"
fi
if [[ -n "$max_images" && -z "$data_root" ]]; then
    die "--max-images applies to verification; give --data ROOT too"
fi
if [[ -n "$dla_core" ]]; then
    IFS=: read -r low opt high <<<"${batch:-none}"
    if [[ -z "$batch" || ( -n "${opt:-}" && ( "$low" != "$opt" || "$opt" != "$high" ) ) ]]; then
        die "DLA has no dynamic shapes: give a fixed batch with --dla-core (--batch N, e.g. --batch 8)"
    fi
fi

# The edgereid command, as words: EDGEREID may be "python3 -m edgereid".
read -r -a edgereid <<<"${EDGEREID:-edgereid}"
command -v "${edgereid[0]}" >/dev/null 2>&1 \
    || die "'${edgereid[0]}' not found; install edgereid (pip install edgereid, in a venv made with --system-site-packages so TensorRT's Python bindings are visible) or set EDGEREID"
if [[ -z "${PYTHON:-}" ]]; then
    beside="$(dirname "$(command -v "${edgereid[0]}")")/python"
    if [[ "${edgereid[0]}" == *python* ]]; then
        PYTHON="${edgereid[0]}"
    elif [[ -x "$beside" ]]; then
        PYTHON="$beside"
    else
        PYTHON=python3
    fi
fi

# The bundle's precisions, from its manifest (the same Python that runs edgereid reads it: no jq needed).
mapfile -t available < <("$PYTHON" -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as file:
    models = json.load(file).get("models", {})
print("\n".join(p for p in ("fp32", "fp16", "int8") if p in models))
' "$bundle/manifest.json") || die "cannot read '$bundle/manifest.json' with $PYTHON"
[[ ${#available[@]} -gt 0 ]] || die "'$bundle/manifest.json' lists no models"

if [[ ${#precisions[@]} -eq 0 ]]; then
    precisions=("${available[@]}")
fi
selected=()
for precision in "${ALL_PRECISIONS[@]}"; do
    wanted=0
    for p in "${precisions[@]}"; do
        [[ "$p" == "$precision" ]] && wanted=1
    done
    [[ "$wanted" -eq 1 ]] || continue
    if [[ " ${available[*]} " != *" $precision "* ]]; then
        die "'$bundle' has no $precision model (it has: ${available[*]}); re-export with --fp16/--int8"
    fi
    if [[ -n "$dla_core" && "$precision" == fp32 ]]; then
        note "skipping fp32: DLA runs FP16 and INT8 only"
        continue
    fi
    selected+=("$precision")
done
[[ ${#selected[@]} -gt 0 ]] || die "nothing to build"

if [[ "$dry_run" -eq 0 ]]; then
    trt_version="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)" \
        || die "TensorRT's Python bindings do not import with $PYTHON; on JetPack: sudo apt-get install python3-libnvinfer, and make the venv with --system-site-packages (see deploy/README.md)"
    note "TensorRT $trt_version"
fi

timing_cache="${timing_cache:-$bundle.timing-cache}"
verify_dir="${verify_dir:-$(dirname "$bundle")}"
name="$(basename "$bundle")"

failed=()
for precision in "${selected[@]}"; do
    build=("${edgereid[@]}" build "$bundle" --precision "$precision" --timing-cache "$timing_cache")
    [[ -z "$batch" ]] || build+=(--batch "$batch")
    [[ -z "$workspace" ]] || build+=(--workspace "$workspace")
    [[ -z "$dla_core" ]] || build+=(--dla-core "$dla_core")
    [[ "$version_compatible" -eq 0 ]] || build+=(--version-compatible)
    run "${build[@]}"
done

if [[ -n "$data_root" ]]; then
    [[ "$dry_run" -eq 1 ]] || mkdir -p "$verify_dir"
    for precision in "${selected[@]}"; do
        out="$verify_dir/$name.verify.tensorrt.$precision.json"
        verify=("${edgereid[@]}" verify "$bundle" --backend tensorrt --precision "$precision" --data "$data_root"
            --out "$out")
        [[ -z "$max_images" ]] || verify+=(--max-images "$max_images")
        # A precision outside its tolerance exits 1; record it and verify the others before failing.
        if ! run "${verify[@]}"; then
            failed+=("$precision")
        fi
    done
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    die "verification failed for: ${failed[*]} (see $verify_dir/$name.verify.tensorrt.*.json)" 1
fi
if [[ "$dry_run" -eq 1 ]]; then
    note "dry run: nothing was built"
else
    note "done: ${selected[*]}"
fi
