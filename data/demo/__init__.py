"""The built-in demo dataset's synthesis: spoken and handwritten digits, built offline."""
