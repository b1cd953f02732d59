"""Where a setting is: settings.py (every environment variable, validated), celeryconfig.py (the Celery settings
built from them), queues.py (queues, profiles, routes), schedule.py (beat entries), flowerconfig.py (Flower, if used).
"""
