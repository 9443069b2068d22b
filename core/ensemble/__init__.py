"""Step 7: the weighted ensemble of group adapters and its boosting rounds."""
