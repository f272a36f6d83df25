/* Starts the vendored Swagger UI on the API reference page (templates/api_docs.html); no inline script, so the
   portal's content security policy (script-src 'self') holds here too. */
(function () {
  'use strict';
  function start() {
    var el = document.getElementById('swagger-ui');
    if (!el || typeof window.SwaggerUIBundle !== 'function') return;
    window.SwaggerUIBundle({
      url: el.getAttribute('data-openapi'),
      domNode: el,
      deepLinking: false, // a deep link inside each operation's toggle button would nest a control in a control
      docExpansion: 'list',
      defaultModelsExpandDepth: -1, // the schemas are shown with each operation; the long list at the end is left out
      syntaxHighlight: false, // plain text: readable colours, and no inline styles for the policy to refuse
      tryItOutEnabled: false,
      validatorUrl: null, // never ask an outside validator about our document
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: 'BaseLayout'
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
