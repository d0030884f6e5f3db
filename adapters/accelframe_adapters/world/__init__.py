"""The embedded tiny world: procedural clips with prompts, analytic world quality, and the trained
models the Wan adapters run by default (``size="world"``). See ``docs/world.md``."""
