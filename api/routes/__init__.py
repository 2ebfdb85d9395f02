"""HTTP routes: each translates a request into one service call and its answer."""
