"""enginebuild: a declarative, make-style build system for GPU inference engines."""

__version__ = "0.1.0"

# Bump when the commands buildlib emits change in a way that changes the artifacts:
# it is part of every engine key, so every engine becomes stale.
RECIPE_VERSION = 1
