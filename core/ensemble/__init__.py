"""Step 7: the weighted ensemble of group adapters and its boosting rounds.

`from core.ensemble import Ensemble` loads a workspace's trained ensemble and predicts with it
(core.ensemble.predict). The name loads on first use (PEP 562): the manifest and boosting
helpers are imported by the torch-free dashboard, and the Ensemble needs torch.
"""


def __getattr__(name: str):
    if name == "Ensemble":
        from core.ensemble.predict import Ensemble

        return Ensemble
    raise AttributeError(f"module 'core.ensemble' has no attribute {name!r}")
