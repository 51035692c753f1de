"""Run a benchmark script on the device machine with the reference chatterbox-tts importable.

The reference's package ``__init__`` imports ``perth`` (Resemble's watermarker, a 34 MB wheel) that
no benchmark here uses; it does not fit the device carry limit, so its import is satisfied by an
empty module that fails loudly if anything touches it.

    python3 bench/device/with_reference.py SCRIPT.py [ARGS...]
"""

from __future__ import annotations

import runpy
import sys
import types


class _AbsentModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # module introspection (inspect, pickle) must see a plain module
            raise AttributeError(name)
        raise RuntimeError(f"{self.__name__}.{name} is not available on the device machine")


if __name__ == "__main__":
    sys.modules.setdefault("perth", _AbsentModule("perth"))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]  # the script sees itself as argv[0]
    runpy.run_path(script, run_name="__main__")
