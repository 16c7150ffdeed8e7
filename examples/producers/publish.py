#!/usr/bin/env python3
"""Publish invalidation requests to the fleet from Python (pika).

The way every producer should publish, whatever its language:

- never declare `invalidation.requests` (its arguments, such as the alternate
  exchange, belong to the fleet's topology; a declare with other arguments
  fails with PRECONDITION_FAILED): declare it passively, which only checks
  that it exists, or not at all;
- publisher confirms on, and a message counts as sent only once confirmed;
- `mandatory=True`, persistent delivery (delivery_mode 2), JSON content type;
- a `requestId` of your own, so a retry after a lost confirm is recognised
  as the same request;
- the routing key is the invalidation type in lower case (`price`).

Usage:
  AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F \\
    python3 examples/producers/publish.py PRICE brand.id 40 trTR [REQUEST_ID]
"""

import json
import os
import sys
import uuid

import pika


def publish(url, invalidation_type, field, ids, index_keys, request_id=None):
    request_id = request_id or str(uuid.uuid4())
    body = {
        "v": 1,
        "requestId": request_id,
        "parameterIds": ids,
        "parameterName": field,
        "invalidationType": invalidation_type,
        "indexKeys": index_keys,
    }
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        # Passive: checks the exchange exists, changes nothing.
        channel.exchange_declare("invalidation.requests", passive=True)
        channel.confirm_delivery()
        # With confirms on, basic_publish raises if the broker nacks the
        # message (or returns it as unroutable).
        channel.basic_publish(
            exchange="invalidation.requests",
            routing_key=invalidation_type.lower(),
            body=json.dumps(body).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=request_id,
                app_id="example-producer",
            ),
            mandatory=True,
        )
    finally:
        connection.close()
    return request_id


def main(argv):
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    invalidation_type, field, ids, keys = argv[1], argv[2], argv[3], argv[4]
    request_id = argv[5] if len(argv) > 5 else None
    sent = publish(
        url,
        invalidation_type,
        field,
        [int(i) for i in ids.split(",")],
        keys.split(","),
        request_id,
    )
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
