"""Generation engines a rank can run instead of transformers' ``generate`` (``task.engine``):
requests fed one by one and results handed back as each finishes (``stream_loop``)."""
