// cirelay's /docs: Swagger UI on the document this same server serves (no CDN, no
// validator service: an air-gapped cluster shows it whole).
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
