// Signs a provider webhook as the provider does, for the end-to-end tests
// (tests/tests/e2e_provider_webhooks.rs). Stripe, GitHub and Twilio with
// their own SDKs (npm `stripe`, `@octokit/webhooks-methods`, `twilio`);
// Slack, Shopify and HubSpot, which publish no signer, by their documented
// algorithms with node:crypto (the broker's side of those is also held by
// Slack's documented vector in shared/domain/src/inbound.rs).
//
// stdin: {"provider", "secret", "body", "url", "timestamp", "method"}
// stdout: {"headers": {...}}
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Stripe from 'stripe';
import twilio from 'twilio';
import { sign as githubSign } from '@octokit/webhooks-methods';

const input = JSON.parse(readFileSync(0, 'utf8'));
const { provider, secret, body, url, timestamp } = input;
const method = input.method || 'POST';
const hmac = (alg, key, data, enc) => createHmac(alg, key).update(data).digest(enc);

async function headersFor() {
  switch (provider) {
    case 'stripe': {
      const stripe = new Stripe('sk_test_unused');
      return {
        'Stripe-Signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp }),
        'Content-Type': 'application/json',
      };
    }
    case 'github':
      return { 'X-Hub-Signature-256': await githubSign(secret, body), 'Content-Type': 'application/json' };
    case 'twilio': {
      const params = Object.fromEntries(new URLSearchParams(body));
      return {
        'X-Twilio-Signature': twilio.getExpectedTwilioSignature(secret, url, params),
        'Content-Type': 'application/x-www-form-urlencoded',
      };
    }
    case 'slack':
      return {
        'X-Slack-Request-Timestamp': String(timestamp),
        'X-Slack-Signature': `v0=${hmac('sha256', secret, `v0:${timestamp}:${body}`, 'hex')}`,
        'Content-Type': 'application/json',
      };
    case 'shopify':
      return { 'X-Shopify-Hmac-SHA256': hmac('sha256', secret, body, 'base64'), 'Content-Type': 'application/json' };
    case 'hubspot': {
      const ms = String(timestamp * 1000);
      return {
        'X-HubSpot-Request-Timestamp': ms,
        'X-HubSpot-Signature-v3': hmac('sha256', secret, `${method}${url}${body}${ms}`, 'base64'),
        'Content-Type': 'application/json',
      };
    }
    default:
      throw new Error(`no signer for ${provider}`);
  }
}

process.stdout.write(JSON.stringify({ headers: await headersFor() }));
