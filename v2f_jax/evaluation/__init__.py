"""`v2f eval`: the metrics, the face embedder that scores them, the pipeline and its report."""
