"""loraprep studio: see and fix the dataset in the browser (grid, image page, filters, batch edits).

`Dataset` (data.py) is the model, `create_app` (app.py) the Starlette app, `register` (cli.py)
adds `loraprep studio` to a typer app. Hand edits go to `prep.overrides`.
"""
