"""The shipped recipes and accelerate configs, installed as the package ``hftool.recipe_files`` (package data)."""
