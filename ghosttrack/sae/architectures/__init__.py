"""One module per SAE architecture: its config dataclass and its `Architecture` (see ../base.py),
registered with `@register`. Every module here is imported when the registry is first asked, so
adding an architecture is adding its file."""
