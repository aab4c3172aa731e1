"""The DigitalOcean node provider: ``api.py`` is the API client (retries, errors), ``provider.py``
the ``NodeProvider`` (droplets, the cluster VPC, the SSH key, a Reserved IP)."""
