"""`orders lab`: the course's claims, measured on the real broker and PostgreSQL.

Each experiment lives in a module (or package) of its own whose docstring quotes the claim of
`kafka-data-flow-course.md` it checks; it runs on topics and groups of its own (`workspace.py`)
and returns tables (`report.py`) that the CLI prints or dumps as JSON.
"""
