"""Compile `protos/` into `serving/_generated/` with grpcio-tools.

Generated code stays out of git: `make install` runs this module, and
`serving.protos` runs it on first import if the output is missing or older
than its sources, so a plain `pip install` works too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent / "protos"
OUT_DIR = PACKAGE_DIR / "_generated"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def is_stale(root: Path = PROTO_ROOT, out: Path = OUT_DIR) -> bool:
    protos = proto_files(root)
    if not protos:
        return False
    for proto in protos:
        target = out / proto.relative_to(root).with_name(proto.stem + "_pb2.py")
        if not target.exists() or target.stat().st_mtime < proto.stat().st_mtime:
            return True
    return False


def generate(root: Path = PROTO_ROOT, out: Path = OUT_DIR) -> None:
    import grpc_tools

    protos = proto_files(root)
    if not protos:
        raise FileNotFoundError(f"no .proto files under {root}")
    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in protos),
    ]
    # A child process: protoc inside a process that has already loaded
    # TensorFlow's protobuf runtime crashes it.
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed on {root}: {result.stderr.strip()}")
    # Generated modules import each other as top-level packages
    # (`modelserver.config...`); `_generated` goes on sys.path in serving.protos.
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def main() -> int:
    generate()
    print(f"generated {len(proto_files())} protos into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
