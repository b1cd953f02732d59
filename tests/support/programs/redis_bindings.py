"""Each queue's bindings as kombu's Redis transport records them, under the project's key prefix.

Arguments: the queue names. Prints {queue: sorted members of its binding set}.
"""

from common import arguments, emit, module

(queues,) = arguments()
client = module("runtime.redis_store").client
key = module("config.settings").settings.global_keyprefix + "_kombu.binding."
emit({q: sorted(client().smembers(key + q)) for q in queues})
