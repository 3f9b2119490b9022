"""The dashboard's static files (static/), served by app.api.routes.ui at /ui."""
