"""The web dashboard at ``/dashboard``: static pages over the JSON API (see ``routes``)."""
