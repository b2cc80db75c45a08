#!/usr/bin/env node
// Screenshots of the hosted Connect page, desktop and phone width, light and
// dark, through the demo page (DEMO_URL) of a running stack: the list, the
// templated integration's form with a refused value, the API-key form
// with a rejected key, the basic form (the provider's labels), empty and
// with a rejected pair, and the client-credentials form. Writes PNGs to SCREENSHOTS_DIR (default
// target/screenshots). Run by scripts/screenshots.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const DEMO_URL = process.env.DEMO_URL || 'http://localhost:9200/';
const OUT = process.env.SCREENSHOTS_DIR || 'target/screenshots';
const SIZES = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };
mkdirSync(OUT, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  for (const scheme of ['light', 'dark']) {
    for (const [size, viewport] of Object.entries(SIZES)) {
      const context = await browser.newContext({ colorScheme: scheme, viewport });
      const page = await context.newPage();
      page.setDefaultTimeout(60_000);
      await page.goto(DEMO_URL);
      await page.locator('#connect-any:not([disabled])').waitFor();
      const popupPromise = context.waitForEvent('page');
      await page.click('#connect-any');
      const popup = await popupPromise;
      popup.on('pageerror', (e) => console.error('pageerror', e.message));
      popup.on('response', (r) => process.env.DEBUG && console.error('resp', r.status(), r.url()));
      await popup.setViewportSize(viewport);
      await popup.locator('#integrations li').first().waitFor();
      const shot = async (name) => {
        const file = join(OUT, `connect-${name}-${size}-${scheme}.png`);
        await popup.screenshot({ path: file, fullPage: true });
        console.log(file);
      };
      await shot('list');
      await popup.click('button[data-integration="shops"]');
      await popup.fill('#field-shop', 'Not A Shop');
      await popup.click('#submit');
      await popup.locator('#field-shop-error').waitFor({ state: 'visible' });
      await shot('field');
      await popup.click('#back');
      await popup.click('button[data-integration="keys"]');
      await popup.fill('#api-key', 'wrong-key');
      await popup.click('#submit');
      await popup.locator('#error').waitFor({ state: 'visible' });
      await shot('key-rejected');
      await popup.click('#back');
      await popup.click('button[data-integration="logins"]');
      await popup.fill('#username', 'demo-user');
      await shot('basic');
      await popup.fill('#password', 'wrong-pass');
      await popup.click('#submit');
      await popup.locator('#error').waitFor({ state: 'visible' });
      await shot('basic-rejected');
      await popup.click('#back');
      await popup.click('button[data-integration="machines"]');
      await popup.locator('#client-id').waitFor();
      await shot('client-credentials');
      await popup.click('#back');
      await popup.click('button[data-integration="service-accounts"]');
      await popup.locator('#key-file').waitFor();
      await shot('service-account');
      await context.close();
    }
  }
} finally {
  await browser.close();
}
