"""`longformer.accelerate` and `longformer.interop` load lazily: importing the package pulls in neither
transformers nor peft (both optional)."""
from __future__ import annotations

import subprocess
import sys


def test_import_longformer_does_not_import_transformers():
    code = ("import sys, longformer, longformer.interop, longformer.encoder; "
            "assert 'transformers' not in sys.modules and 'peft' not in sys.modules, sorted(sys.modules); "
            "assert 'accelerate' in longformer.__all__ and callable(longformer.__getattr__)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    import longformer
    import longformer.interop

    for module in (longformer, longformer.interop):
        try:
            module.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("expected AttributeError")
