"""The `dynia` command line: thin click commands that call services and print results."""
