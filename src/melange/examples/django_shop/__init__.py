"""A Django app that publishes from a view and consumes in a management command.

Add ``"melange.examples.django_shop"`` to ``INSTALLED_APPS``, include its ``urls`` and set
``MELANGE_BACKEND_URL`` in the settings; ``python manage.py consume_orders`` then consumes
what ``POST /orders/`` publishes (see ``docs/integrations.md``).
"""
