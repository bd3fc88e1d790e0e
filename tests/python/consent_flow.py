"""Walks Warden's consent pages as a browser would, with requests (cookies,
redirects, forms): follows a consent URL to the identity provider's sign-in
page, signs in, comes back to the consent page, and approves (or denies) with
the scopes it is told to keep; or opens the grants page and revokes a grant.

Reads JSON on stdin:
  {"action": "approve", "url": <consent URL>, "user": "alice",
   "keep": [scopes to leave ticked] | null (all), "duration": secs | null,
   "grantee": "agent" | "type", "deny": false}
  {"action": "revoke", "base": <control plane HTTP URL>, "user": "alice",
   "grant": <grant id>}
Prints JSON: {"status", "page" (the final page's text), "grant", "scopes",
"offered" (the scopes the consent page offered), "agent_type"}.
"""

import html.parser
import json
import re
import sys
import urllib.parse

import requests


class Forms(html.parser.HTMLParser):
    """Every form: its action, method and inputs (name, type, value, checked)."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.selects = {}
        self._select = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(a)
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1]["inputs"].append({"name": a["name"], "type": "submit", "value": a.get("value", "")})
        elif tag == "select":
            self._select = a.get("name")
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(a.get("value"))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def forms_of(text):
    p = Forms()
    p.feed(text)
    return p


def sign_in(s, r, user):
    """From the identity provider's sign-in page, signs `user` in and follows
    the redirects back to Warden."""
    f = forms_of(r.text).forms[0]
    data = {i["name"]: i.get("value", "") for i in f["inputs"] if i.get("type") == "hidden"}
    data["username"] = user
    target = urllib.parse.urljoin(r.url, f["action"] or r.url)
    return s.post(target, data=data)


def text_of(page):
    return re.sub(r"<[^>]+>", " ", page)


def approve(req):
    s = requests.Session()
    r = s.get(req["url"])
    if "/authorize" in r.url:
        r = sign_in(s, r, req["user"])
    out = {"status": r.status_code, "page": text_of(r.text)}
    p = forms_of(r.text)
    m = re.search(r'id="agent-type">([^<]*)<', r.text)
    out["agent_type"] = m.group(1) if m else None
    approve_forms = [f for f in p.forms if f["action"] == "/consent/approve"]
    if not approve_forms:
        print(json.dumps(out))
        return
    f = approve_forms[0]
    offered = [i["value"] for i in f["inputs"] if i.get("name") == "scope"]
    out["offered"] = offered
    keep = req.get("keep")
    data = [(i["name"], i["value"]) for i in f["inputs"] if i.get("type") == "hidden"]
    data += [("scope", v) for v in offered if keep is None or v in keep]
    durations = p.selects.get("duration", [])
    data.append(("duration", str(req.get("duration") or durations[0])))
    data.append(("grantee", req.get("grantee", "agent")))
    data.append(("decision", "deny" if req.get("deny") else "approve"))
    base = urllib.parse.urljoin(r.url, "/")
    r = s.post(urllib.parse.urljoin(base, f["action"]), data=data)
    out["status"] = r.status_code
    out["page"] = text_of(r.text)
    m = re.search(r'id="grant">([^<]*)<', r.text)
    out["grant"] = m.group(1) if m else None
    m = re.search(r'id="scopes">([^<]*)<', r.text)
    out["scopes"] = m.group(1).split() if m else []
    print(json.dumps(out))


def revoke(req):
    s = requests.Session()
    r = s.get(req["base"] + "/grants")
    if "/authorize" in r.url:
        r = sign_in(s, r, req["user"])
    p = forms_of(r.text)
    out = {"status": r.status_code, "page": text_of(r.text)}
    for f in p.forms:
        values = {i.get("name"): i.get("value") for i in f["inputs"]}
        if f["action"] == "/grants/revoke" and values.get("grant") == req["grant"]:
            data = {k: v for k, v in values.items() if k}
            r = s.post(req["base"] + f["action"], data=data)
            out = {"status": r.status_code, "page": text_of(r.text)}
            break
    else:
        out["status"] = 404
    print(json.dumps(out))


req = json.load(sys.stdin)
{"approve": approve, "revoke": revoke}[req["action"]](req)
