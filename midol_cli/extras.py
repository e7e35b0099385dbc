"""Optional parts of midol and the pip extra that installs each (pyproject's optional-dependencies).

The base install is lean: DICOM decoder plugins, h5py, matplotlib, the trackers, ONNX, the slide reader
(openslide), the OCT vendor reader (eyepy) and LoRA adapters (peft) come with an extra
(``pip install 'midol[dicom]'``, ``[hdf5]``, ``[plots]``, ``[tracking]``, ``[onnx]``, ``[wsi]``, ``[oct]``,
``[peft]``, ``[all]``).
A feature whose package is missing ends in one line naming the extra, never an ImportError traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from midol_cli.errors import UsageError


def install_hint(extra: str) -> str:
    """The command that installs an extra: ``pip install 'midol[plots]'``."""
    return f"pip install 'midol[{extra}]'"


def has(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a parent package may be imported).
    A module set to None in ``sys.modules`` counts as missing, as Python's import does."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return False


def missing_message(feature: str, package: str, extra: str) -> str:
    """``JPEG 2000 DICOM needs pylibjpeg-openjpeg: pip install 'midol[dicom]'``."""
    return f"{feature} needs {package}: {install_hint(extra)}"


def require(module: str, extra: str, feature: str, package: str | None = None,
            error: type[Exception] = UsageError) -> ModuleType:
    """Import ``module`` or raise ``error`` (one line) naming the ``package`` (default: the module's top
    name) and the extra that installs it. ``error`` is any class built from one message, such as
    UsageError, RunFailed or the ingest's ImageRejected."""
    if not has(module):
        raise error(missing_message(feature, package or module.split(".")[0], extra))
    try:
        return importlib.import_module(module)
    except ImportError as e:  # installed but broken (a missing shared library, say): still one line
        raise error(f"{missing_message(feature, package or module.split('.')[0], extra)} "
                    f"(importing {module} failed: {e})") from None
