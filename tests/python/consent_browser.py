"""Drives Warden's consent pages in a real headless browser (Debian's chromium
through chromedriver, with Selenium): sign in at the identity provider,
approve some of the scopes asked for; or open the grants page and revoke one.

Reads JSON on stdin:
  {"action": "approve", "url": <consent URL>, "user": "alice", "untick": [scopes]}
  {"action": "revoke", "base": <control plane HTTP URL>, "user": "alice", "grant": <id>}
Prints JSON: for approve {"agent", "agent_type", "owner", "version", "offered",
"grant", "scopes", "text"}; for revoke {"text"}.
"""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("WARDEN_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("WARDEN_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def wait_for(d, css):
    return WebDriverWait(d, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def sign_in(d, user):
    wait_for(d, "#username").send_keys(user)
    d.find_element(By.CSS_SELECTOR, "#signin").click()


def approve(d, req):
    d.get(req["url"])
    sign_in(d, req["user"])
    wait_for(d, "#approve")
    text = lambda css: d.find_element(By.CSS_SELECTOR, css).text  # noqa: E731
    out = {
        "agent": text("#agent"),
        "agent_type": text("#agent-type"),
        "owner": text("#agent-owner"),
        "version": text("#agent-version"),
        "offered": [],
    }
    for box in d.find_elements(By.CSS_SELECTOR, "input[name=scope]"):
        scope = box.get_attribute("value")
        out["offered"].append(scope)
        if scope in req.get("untick", []) and box.is_selected():
            box.click()
    d.find_element(By.CSS_SELECTOR, "#approve").click()
    wait_for(d, "#granted")
    out["grant"] = text("#grant")
    out["scopes"] = text("#scopes").split()
    out["text"] = text("#granted")
    return out


def revoke(d, req):
    d.get(req["base"] + "/grants")
    sign_in(d, req["user"])
    row = wait_for(d, f'tr[id="{req["grant"]}"]')
    row.find_element(By.CSS_SELECTOR, "button.revoke").click()
    return {"text": wait_for(d, "#revoked").text}


req = json.load(sys.stdin)
d = browser()
try:
    print(json.dumps({"approve": approve, "revoke": revoke}[req["action"]](d, req)))
finally:
    d.quit()
