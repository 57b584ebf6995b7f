"""The applications on a trained model: the inference API, embedding, evaluation sets and their pictures, search and its server."""
