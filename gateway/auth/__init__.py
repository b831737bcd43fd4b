"""Identity: who sent a request, for which team, with which roles."""
