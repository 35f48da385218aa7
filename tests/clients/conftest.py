"""Fixtures the callers' suites share."""

from __future__ import annotations

import importlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """Python stubs generated from the proto, as a consuming team would."""
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    proto = "corrigopro/attachments/v1/attachments.proto"
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={out}",
                        f"--pyi_out={out}", f"--grpc_python_out={out}", proto])
    assert code == 0, "protoc failed"
    for d in ["corrigopro", "corrigopro/attachments", "corrigopro/attachments/v1"]:
        (out / d / "__init__.py").touch()
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("corrigopro.attachments.v1.attachments_pb2")
    pb2_grpc = importlib.import_module("corrigopro.attachments.v1.attachments_pb2_grpc")
    return pb2, pb2_grpc
