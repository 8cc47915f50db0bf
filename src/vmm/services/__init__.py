"""The use cases, one service per family, built together by ``vmm.app.Vmm`` (the composition
root). The CLI and the web API call these; nothing below them imports them."""
