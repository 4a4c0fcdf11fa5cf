"""Small helpers shared by tasks and callbacks."""
