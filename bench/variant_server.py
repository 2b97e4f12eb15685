"""`python -m bench.variant_server`: the real service (`service.__main__.main`) with one
onnxruntime session option forced from the environment, for A/B runs in section 3.

    BENCH_ORT_SPINNING=0|1   session config `session.intra_op.allow_spinning` (ORT default: 1)

Nothing else differs from `python -m service`: same app, same settings (LANDMARKS_*).
"""

from __future__ import annotations

import os
import sys

import onnxruntime as ort

KEY = "session.intra_op.allow_spinning"


def _patch_session_options() -> None:
    spinning = os.environ.get("BENCH_ORT_SPINNING")
    if spinning not in ("0", "1"):
        return
    base = ort.SessionOptions

    class SessionOptions(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            base.add_session_config_entry(self, KEY, spinning)

        def add_session_config_entry(self, key, value):
            if key != KEY:  # the forced value wins over whatever the service sets
                base.add_session_config_entry(self, key, value)

    ort.SessionOptions = SessionOptions  # service.engine.session calls ort.SessionOptions()


if __name__ == "__main__":
    _patch_session_options()
    from service.__main__ import main

    sys.argv[1:] = []
    sys.exit(main())
