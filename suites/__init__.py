"""Suite files (*.yaml) shipped with mimbench: installed as package data beside this module."""
