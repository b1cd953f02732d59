"""Task modules. Each module's tasks go to one queue, by the module routes in queues.py."""
