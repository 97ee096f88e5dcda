"""Small shared helpers: user-facing errors, config discovery."""
