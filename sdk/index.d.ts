// Types of @oauth-broker/connect.

/** The broker's stable error codes a connect attempt can end with, and the SDK's own. */
export type ConnectErrorCode =
  | 'access_denied'
  | 'session_expired'
  | 'invalid_session'
  | 'session_used'
  | 'origin_mismatch'
  | 'unbound_link'
  | 'integration_not_allowed'
  | 'unknown_integration'
  | 'invalid_connection_config'
  | 'api_key_rejected'
  | 'provider_unavailable'
  | 'provider_error'
  | 'token_exchange_failed'
  | 'invalid_id_token'
  | 'issuer_mismatch'
  | 'state_expired'
  | 'temporarily_unavailable'
  // The SDK's own:
  | 'popup_blocked'
  | 'window_closed'
  | 'cancelled'
  | 'invalid_options'
  | 'status_unavailable'
  | 'unknown_error'
  | (string & {});

export declare class ConnectError extends Error {
  readonly name: 'ConnectError';
  readonly code: ConnectErrorCode;
  constructor(code: ConnectErrorCode, message?: string);
}

export interface ConnectResult {
  status: 'connected';
  connectionId: string;
}

export interface ConnectOptions {
  /** The broker's base URL, e.g. `https://connect.example.com/`. */
  broker: string;
  /**
   * The connect session token your backend minted (`POST /connect-sessions`),
   * or a promise of it: open the popup in the click handler, mint in parallel.
   */
  sessionToken: string | Promise<string> | (() => string | Promise<string>);
  /** Go straight to this integration of the session. */
  integration?: string;
  /** `popup` (default) or `redirect` (the session needs a `return_to`). */
  mode?: 'popup' | 'redirect';
  /** Polling of the session's status once the popup closed without a message. */
  pollIntervalMs?: number;
  /**
   * How long to keep polling after the popup closed while the session is
   * still pending, before rejecting with `window_closed` (default 2000).
   * Raise it for providers whose pages cut the popup from its opener.
   */
  waitAfterCloseMs?: number;
  /**
   * How long to keep polling after the popup reads closed while the broker
   * says a flow of the session is still at the provider
   * (`flow_expires_in` > 0), default 300000. A provider page sent with
   * `Cross-Origin-Opener-Policy: same-origin` cuts the popup off from this
   * window while the user is still signing in; the result then arrives
   * through `/oauth/status` when the flow ends.
   */
  waitForProviderMs?: number;
  /**
   * Called once when the popup reads closed while a flow is still at the
   * provider: the SDK is waiting for its outcome. Offer the person a way
   * out (abort `signal`): from this window a popup the provider cut off
   * and one the person closed look the same.
   */
  onWaiting?: () => void;
  /** Aborting closes the popup and rejects with `cancelled`. */
  signal?: AbortSignal;
  popupFeatures?: string;
  windowName?: string;
  /** The window to open from (defaults to the global `window`). */
  window?: Window;
}

/**
 * Opens the broker's hosted Connect page. Call it synchronously from a user
 * gesture (a click) so popup blockers allow it. In redirect mode the tab
 * navigates away and the promise never settles; read the outcome on the
 * return page with `readRedirectResult()`.
 */
export declare function connect(options: ConnectOptions): Promise<ConnectResult>;

/** The outcome the broker put on the return URL; `null` when there is none. Throws `ConnectError` on a failed attempt. */
export declare function readRedirectResult(url?: string): ConnectResult | null;
