"""Hand-written peers for the serving benchmark: what a user would write instead of the model server."""
