#!/usr/bin/env bash
# Download into .whl/ (git-ignored) every wheel the GPU machine lacks, for CPython 3.12 on manylinux x86_64:
# that machine has Python 3.12, torch 2.11.0+cu130, numpy, scipy, pandas, tensorboard, tqdm, torchmetrics,
# pyyaml, packaging, matplotlib, scikit-learn, pillow, filelock, fsspec, jinja2, sympy, networkx,
# typing_extensions and pytest, and no network. scripts/gpu_check.sh installs .whl/ with --no-deps to
# /tmp/site when Hydra does not import. .whl/ travels to the GPU machine with the checkout; a transfer of
# 64 MiB in all must hold both, so the script fails above 56 MiB. See docs/gpu.md.
#   bash scripts/gpu_wheels.sh            # then: VERIFY=1 bash scripts/gpu_wheels.sh (also checks the list)
# The list: the project's dependencies and its backbones extra (pyproject.toml), each pinned to a version
# that pyproject allows and that runs on torch 2.11, plus every package their metadata requires (the
# Requires-Dist closure) that the GPU image does not have. torchvision 0.26.0 is the release built for
# torch 2.11 (its PyPI wheel is the CUDA 13.0 build, with nvjpeg for GPU JPEG decoding).
# VERIFY=1: (a) every Requires-Dist of every wheel here (markers evaluated for CPython 3.12 on Linux x86_64)
# is met by a wheel here or by the GPU image; (b) the same wheels (the cp311 builds of the compiled ones)
# installed with --no-deps into an empty folder import hydra, torchjd, timm, transformers, peft and
# torchvision in an isolated Python (python -I) that sees only that folder and this machine's copies of
# the GPU image's packages.
# Settings come from the environment only: --help prints the comment above, any argument is refused.
case "${1-}" in
  -h|--help) sed -n '2,/^# Settings come from/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "$(basename "$0"): error: it takes no arguments, found '$1'; set its environment variables instead (--help)" >&2
     exit 2 ;;
esac
set -euo pipefail
DEST=${DEST:-.whl}
LIMIT_MIB=${LIMIT_MIB:-56}
PY=${PYTHON_VERSION:-3.12}
PACKAGES=(
  # the core's dependencies (pyproject.toml) the image lacks
  hydra-core==1.3.8 omegaconf==2.3.1 torchjd==0.18.0 qpsolvers==4.13.0 quadprog==0.1.14
  # the backbones extra: torchvision for torch 2.11, timm, transformers, peft, safetensors, tokenizers
  torchvision==0.26.0 timm==1.0.31 transformers==5.24.0 peft==0.21.2 safetensors==0.8.0 tokenizers==0.23.3
  # what those require at import
  huggingface-hub==2.4.0 hf-xet==1.8.0 regex==2026.5.9 accelerate==1.15.0 psutil==7.2.2
  typer==0.29.2 click==8.5.1 shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
  pygments==2.20.0 annotated-doc==0.0.7 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
  typing-inspection==0.4.2 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 idna==3.20
  truststore==0.10.5
)
SDISTS=(antlr4-python3-runtime==4.9.3)  # published as a source archive only: built into a pure-Python wheel
# The GPU image's packages (and what they bring), never downloaded: a Requires-Dist on one of them is met.
IMAGE="torch numpy scipy pandas tensorboard tqdm torchmetrics pyyaml packaging matplotlib scikit-learn pillow
filelock fsspec jinja2 markupsafe sympy mpmath networkx typing-extensions setuptools pytest pluggy iniconfig
triton six python-dateutil joblib threadpoolctl"

download() {  # download DEST PYTHON_VERSION: the wheels of PACKAGES and SDISTS for that CPython
  local dest=$1 py=$2
  mkdir -p "$dest"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "${PACKAGES[@]}"
  python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$dest" "${SDISTS[@]}"
}

download "$DEST" "$PY"
size_kib=$(du -sk "$DEST" | cut -f1)
echo "$(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST: $((size_kib / 1024)) MiB (limit $LIMIT_MIB MiB)"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "error: $DEST is over $LIMIT_MIB MiB: checkout + wheels must fit a 64 MiB transfer; drop a package or pick a smaller one"
  exit 1
fi
[ "${VERIFY:-0}" = 1 ] || exit 0

echo "== (a) every Requires-Dist is met by a wheel here or by the GPU image"
python3 - "$DEST" "$PY" "$IMAGE" <<'EOF'
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

folder, py, image = Path(sys.argv[1]), sys.argv[2], {canonicalize_name(n) for n in sys.argv[3].split()}
env = {"python_version": py, "python_full_version": f"{py}.0", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix"}
wheels = {}
for path in folder.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        wheels[name] = (version, Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or [])
extras = {"torchjd": {"quadprog-projector"}}  # the extra pyproject asks for
missing = []
for name, (version, requires) in sorted(wheels.items()):
    for line in requires:
        req = Requirement(line)
        wanted = [""] + sorted(extras.get(name, ()))
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
            continue
        dep = canonicalize_name(req.name)
        if dep in image:
            continue
        if dep not in wheels:
            missing.append(f"{name} {version} requires {line}: no wheel")
        elif wheels[dep][0] not in req.specifier:
            missing.append(f"{name} {version} requires {line}: the wheel is {wheels[dep][0]}")
print(f"{len(wheels)} wheels checked")
for m in missing:
    print("missing:", m)
sys.exit(1 if missing else 0)
EOF

echo "== (b) a --no-deps install of the same wheels (cp311 builds here) imports the packages in isolation"
here=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PACKAGES=("${PACKAGES[@]/torchvision==0.26.0/torchvision==$(python3 -c 'import torchvision; print(torchvision.__version__.split("+")[0])')}")
download "$tmp/wheels" "$here"  # torchvision: this machine's torch's release (0.26.0 loads on torch 2.11 only)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" "$tmp"/wheels/*.whl
# The GPU image: this machine's copies of its packages only, linked into one folder.
python3 - "$tmp/image" "$IMAGE" <<'EOF'
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

out = Path(sys.argv[1])
out.mkdir()
names = set(sys.argv[2].split()) | {"nvidia-cuda-runtime", "cuda-bindings", "cuda-pathfinder"}
for dist in md.distributions():
    name = canonicalize_name(dist.metadata["Name"])
    if name not in {canonicalize_name(n) for n in names} and not name.startswith(("nvidia-", "cuda-")):
        continue
    for f in dist.files or []:
        top = f.parts[0]
        src = Path(dist.locate_file(top))
        if top == ".." or not src.exists() or (out / top).exists():
            continue
        (out / top).symlink_to(src)
EOF
python3 -I -S -c "
import sys
sys.path[:0] = ['$tmp/site', '$tmp/image']
import hydra, omegaconf, torchjd, timm, transformers, peft, torchvision, safetensors, tokenizers
from torchjd.aggregation import UPGrad
from torchjd.linalg import QuadprogProjector
from transformers import BertConfig, BertModel
from peft import LoraConfig, get_peft_model
m = get_peft_model(BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32)), LoraConfig(target_modules=['query']))
timm.create_model('test_vit', pretrained=False)
for mod in (hydra, torchjd, timm, transformers, peft, torchvision):
    assert mod.__file__.startswith('$tmp/site'), mod.__file__
print('imports from the wheels only:', ', '.join(f'{m.__name__} {getattr(m, \"__version__\", \"\")}'
                                                for m in (hydra, torchjd, timm, transformers, peft, torchvision)))
"
