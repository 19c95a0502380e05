"""``python -m hsmsign`` runs the command-line interface."""

from .launch import console_main

console_main()
