"""Verifies webhook deliveries with the Standard Webhooks reference library
(`standardwebhooks`, PyPI). Reads JSON from stdin: {"secret": "whsec_…",
"deliveries": [{"headers": {...}, "body": "..."}]}; prints one JSON line per
delivery: the verified payload, or {"error": ...} when it does not verify.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    given = json.load(sys.stdin)
    wh = Webhook(given["secret"])
    for d in given["deliveries"]:
        try:
            payload = wh.verify(d["body"], d["headers"])
            print(json.dumps({"payload": payload}))
        except WebhookVerificationError as e:
            print(json.dumps({"error": str(e)}))


if __name__ == "__main__":
    main()
