"""Route modules; make_app mounts one per engine the service runs."""
