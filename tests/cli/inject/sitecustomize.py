"""Planted on PYTHONPATH by the multi-device test: the process of local rank 1 fails while its data is set up.

``LIT_FEATURES_TEST_RANK1_FAILS=user`` raises a manifest error there (only on that rank), as a user error in
one rank's share would; ``bug`` raises a plain RuntimeError.
"""

import os

if os.environ.get("LOCAL_RANK") == "1" and os.environ.get("LIT_FEATURES_TEST_RANK1_FAILS"):
    import lit_features.data.datamodule as datamodule
    from lit_features.data.manifest import ManifestError

    def _setup(self, stage):
        if os.environ["LIT_FEATURES_TEST_RANK1_FAILS"] == "user":
            raise ManifestError("rank1_share.json", "planted error of rank 1", 3, "path")
        raise RuntimeError("planted bug on rank 1")

    datamodule.ManifestDataModule.setup = _setup
