"""``tracemirrorctl``: ask a running daemon (over its socket) or the bucket (directly) what is going on."""
