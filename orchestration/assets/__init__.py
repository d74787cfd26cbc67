"""Assets by role: data (archive, curation), features (Feast), training, evaluation, export."""
