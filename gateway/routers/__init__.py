"""HTTP routes: thin translations between requests and serving objects."""
