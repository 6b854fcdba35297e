"""One module per command's run, read top to bottom: check the inputs, claim the output folder, load model and
tokenizer (:mod:`hftool.loading`), build the task, call the engine or the generator, write the final artifacts
(:mod:`hftool.runs.artifacts`). The CLI calls these; ``tasks``, ``engine``, ``data`` and ``generation`` never
import them."""
