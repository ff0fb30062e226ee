// Berth: a private OCI registry on Azure Functions (Flex Consumption) + Azure Storage.
// Everything speaks Entra ID (no shared keys anywhere) and is reachable through private
// endpoints in the registry's VNet. Deploy: see infra/README.md.

targetScope = 'resourceGroup'

@description('Name prefix; the function app is <name>-<suffix>, reachable as <that>.azurewebsites.net.')
@minLength(3)
@maxLength(16)
param name string = 'berth'

param location string = resourceGroup().location

@description('Storage replication for the registry\'s data.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

param vnetAddressPrefix string = '10.40.0.0/16'
param integrationSubnetPrefix string = '10.40.1.0/24'
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

@description('Hub-spoke: an existing subnet for the app\'s VNet integration (delegated to Microsoft.App/environments, /27 or larger); with it no VNet is created (and natGateway does not apply: egress is the hub\'s).')
param existingIntegrationSubnetId string = ''

@description('Hub-spoke: an existing subnet for the private endpoints (with existingIntegrationSubnetId).')
param existingPrivateEndpointSubnetId string = ''

@description('Hub-spoke: existing private DNS zones by service (blob, table, queue, sites, eventgrid -> zone resource id), linked centrally; a service named here gets no zone of its own.')
param privateDnsZoneIds object = {}

@description('Outbound internet access for the app through a NAT gateway with a static public IP (Entra ID signing keys, upstream registries, public webhooks). Off: the app reaches only its private endpoints and the VNet (Entra ID logins then fail unless a firewall routes the traffic).')
param natGateway bool = true

@description('Resource id of a VNet whose clients pull from the registry (its private DNS zones get linked); empty for none.')
param clientVnetId string = ''

@description('Disabled: the app is reachable only through its private endpoint. Enabled only for a public registry.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('App ID URI (and/or client id) of the registry\'s Entra app registration (BERTH_ENTRA_AUDIENCE).')
@minLength(1)
param entraAudience string

@description('How blob GETs are answered: redirect (307 to a short-lived SAS via storage\'s private endpoint) or proxy.')
@allowed([
  'redirect'
  'proxy'
])
param blobDelivery string = 'redirect'

@description('Let anyone who reaches the registry pull without credentials.')
param anonymousPull bool = false

@description('Existing Key Vault (same resource group) holding the token-signing key; recommended.')
param keyVaultName string = ''

@description('Secret in that Key Vault: base64 of at least 32 random bytes.')
param signingKeySecretName string = 'berth-token-signing-key'

@description('Used only without a Key Vault: base64 of at least 32 random bytes.')
@secure()
param tokenSigningKey string = ''

@description('Largest request body the platform accepts, in bytes (a layer pushed in one request).')
param requestBodySizeLimit int = 2000000000

param maximumInstanceCount int = 40

@description('HTTP requests one instance serves at once (Flex Consumption perInstanceConcurrency). Measured (bench/concurrency.py): a streaming upload holds 26-36 MiB, so 32 of them (~1 GiB) fit a 2048 MB instance; a pull costs ~0.75 ms of CPU, so 32 add at most ~25 ms of queueing. 64 for pull-heavy registries (instanceMemoryMB 4096 if 64 big pushes may come at once), 16 where many CI runners push big layers at once (uploads share ~285 MiB/s per core). infra/README.md, Scaling.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 32

@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Zone-redundant Flex Consumption plan (only in regions that offer it).')
param zoneRedundant bool = false

param pythonVersion string = '3.11'
param logRetentionDays int = 30

@description('Days an untagged manifest is kept before the daily retention run deletes it (BERTH_RETENTION_DAYS); -1: off. `python -m registry retention set` overrides it.')
@minValue(-1)
@maxValue(365)
param untaggedRetentionDays int = -1
param softDeleteDays int = 7

@description('Publish ImagePushed / ImageDeleted events to a new Event Grid topic (private endpoint, Entra only). Webhooks need nothing here: `python -m registry webhook create`.')
param eventGridTopic bool = false

@description('Structured request log lines in Application Insights (BERTH_REQUEST_LOG): errors, changes (errors and every write: pushes, deletes, logins), all (every pull too: the most traces, the most cost), off.')
@allowed([
  'off'
  'errors'
  'changes'
  'all'
])
param requestLog string = 'changes'

@description('Hosts or CIDR ranges on private addresses that webhooks may call (BERTH_WEBHOOK_PRIVATE_HOSTS), e.g. a deploy service in the VNet: 10.40.0.0/16.')
param webhookPrivateHosts string = ''
param tags object = {
  application: 'berth'
}

var suffix = uniqueString(resourceGroup().id, name)
var appName = '${name}-${suffix}'
var storageName = toLower(take('${replace(name, '-', '')}${suffix}', 24))
var registryContainer = 'berth'
var deploymentContainer = 'app-package'
var tablePrefix = 'berth'
var storageSuffix = environment().suffixes.storage

// Storage data roles are scoped to single containers, tables and queues (modules/storage.bicep).
var roles = {
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

// The subnets and VNet in use: the template's own, or the hub-spoke ones given.
var integrationSubnetId = ownNetwork ? network.outputs.integrationSubnetId : existingIntegrationSubnetId
var privateEndpointSubnetId = ownNetwork ? network.outputs.privateEndpointSubnetId : existingPrivateEndpointSubnetId
var vnetId = ownNetwork ? network.outputs.vnetId : substring(existingIntegrationSubnetId, 0, indexOf(existingIntegrationSubnetId, '/subnets/'))

// A zone given (hub-spoke) is used as it is; for the others, a zone of our own is created and linked.
var givenZones = {
  blob: contains(privateDnsZoneIds, 'blob') ? privateDnsZoneIds.blob : ''
  table: contains(privateDnsZoneIds, 'table') ? privateDnsZoneIds.table : ''
  queue: contains(privateDnsZoneIds, 'queue') ? privateDnsZoneIds.queue : ''
  sites: contains(privateDnsZoneIds, 'sites') ? privateDnsZoneIds.sites : ''
  eventgrid: contains(privateDnsZoneIds, 'eventgrid') ? privateDnsZoneIds.eventgrid : ''
}

// What the registry's code runs as: its data, telemetry, the signing key.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${appName}-identity'
  location: location
  tags: tags
}

// What the platform writes (on deployment) and reads (on start) the app's package with; the only
// identity with a role on that container. The registry's identity cannot rewrite the app's code.
resource deploymentIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${appName}-deploy'
  location: location
  tags: tags
}

var ownNetwork = empty(existingIntegrationSubnetId)

module network 'modules/network.bicep' = if (ownNetwork) {
  name: 'network'
  params: {
    location: location
    name: appName
    addressPrefix: vnetAddressPrefix
    integrationSubnetPrefix: integrationSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    natGateway: natGateway
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: storageName
    skuName: storageSku
    registryContainer: registryContainer
    deploymentContainer: deploymentContainer
    tablePrefix: tablePrefix
    softDeleteDays: softDeleteDays
    runtimePrincipalId: identity.properties.principalId
    deploymentPrincipalId: deploymentIdentity.properties.principalId
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    name: appName
    retentionDays: logRetentionDays
    tags: tags
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: '${appName}-insights'
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
  dependsOn: [
    monitoring
  ]
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (!empty(keyVaultName)) {
  name: empty(keyVaultName) ? 'unused' : keyVaultName
}

resource signingKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = if (!empty(keyVaultName)) {
  parent: keyVault
  name: signingKeySecretName
}

// Secrets User on the one secret, not the vault (the vault must use Azure RBAC: preconditions).
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyVaultName)) {
  name: guid(resourceGroup().id, keyVaultName, signingKeySecretName, identity.id, roles.keyVaultSecretsUser)
  scope: signingKeySecret
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
  }
}

module eventGrid 'modules/eventgrid.bicep' = if (eventGridTopic) {
  name: 'eventgrid'
  params: {
    location: location
    name: '${appName}-events'
    identityPrincipalId: identity.properties.principalId
    tags: tags
  }
}

module eventGridZone 'modules/private-dns.bicep' = if (eventGridTopic) {
  name: 'dns-eventgrid'
  params: {
    zoneName: 'privatelink.eventgrid.azure.net'
    existingZoneId: givenZones.eventgrid
    vnetId: vnetId
    tags: tags
  }
}

module eventGridEndpoint 'modules/private-endpoint.bicep' = if (eventGridTopic) {
  name: 'pe-eventgrid'
  params: {
    location: location
    name: '${appName}-events-pe'
    subnetId: privateEndpointSubnetId
    targetId: eventGrid.outputs.id
    groupId: 'topic'
    dnsZoneId: eventGridZone.outputs.zoneId
    tags: tags
  }
}

// Token auth cannot start without a key every instance shares: refuse the deployment without one.
var signingKeySetting = empty(keyVaultName) ? tokenSigningKey : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${signingKeySecretName})'

// Refuses parameters with which the app cannot start; the app waits for it (other resources may
// already be under way when it fails).
module preconditions 'modules/preconditions.bicep' = {
  name: 'preconditions'
  params: {
    keyVaultName: keyVaultName
    keyVaultUsesRbac: empty(keyVaultName) ? true : (keyVault.properties.?enableRbacAuthorization ?? false)
    tokenSigningKey: tokenSigningKey
    existingIntegrationSubnetId: existingIntegrationSubnetId
    existingPrivateEndpointSubnetId: existingPrivateEndpointSubnetId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: appName
    identityId: identity.id
    identityClientId: identity.properties.clientId
    deploymentIdentityId: deploymentIdentity.id
    storageAccountName: storageName
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainer: deploymentContainer
    integrationSubnetId: integrationSubnetId
    appInsightsConnectionString: monitoring.outputs.connectionString
    publicNetworkAccess: publicNetworkAccess
    pythonVersion: pythonVersion
    zoneRedundant: zoneRedundant
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    requestBodySizeLimit: requestBodySizeLimit
    registrySettings: {
      BERTH_STORAGE_ACCOUNT: storageName
      BERTH_STORAGE_SUFFIX: storageSuffix
      BERTH_MANAGED_IDENTITY_CLIENT_ID: identity.properties.clientId
      BERTH_BLOB_CONTAINER: registryContainer
      BERTH_TABLE_PREFIX: tablePrefix
      BERTH_BLOB_DELIVERY: blobDelivery
      BERTH_AUTH: 'token'
      BERTH_TOKEN_SIGNING_KEY: signingKeySetting
      BERTH_PUBLIC_URL: 'https://${appName}.azurewebsites.net'
      BERTH_ENTRA_TENANT_ID: tenant().tenantId
      BERTH_ENTRA_AUDIENCE: entraAudience
      BERTH_ANONYMOUS_PULL: string(anonymousPull)
      BERTH_RETENTION_DAYS: untaggedRetentionDays < 0 ? '' : string(untaggedRetentionDays)
      // Everything in storage is made above; the identity may not create containers or tables.
      BERTH_CREATE_STORAGE: 'false'
      BERTH_REQUEST_LOG: requestLog
      // The platform's front end appends the caller's address to X-Forwarded-For (failed-login limits).
      BERTH_TRUSTED_PROXY_HOPS: '1'
      // Events: the queue trigger's identity-based connection and queue (storage/events.py).
      BERTH_EVENTS__queueServiceUri: 'https://${storageName}.queue.${storageSuffix}'
      BERTH_EVENTS__credential: 'managedidentity'
      BERTH_EVENTS__clientId: identity.properties.clientId
      BERTH_EVENTS_QUEUE: '${tablePrefix}events'
      BERTH_EVENTGRID_TOPIC_ENDPOINT: eventGridTopic ? eventGrid.outputs.endpoint : ''
      BERTH_WEBHOOK_PRIVATE_HOSTS: webhookPrivateHosts
    }
    tags: tags
  }
  dependsOn: [
    preconditions
    storage // its data roles: an instance that starts before them fails its first requests
    secretsUser // the Key Vault reference is resolved when the app's settings are written
    metricsPublisher
  ]
}

module storageZones 'modules/private-dns.bicep' = [for service in [
  'blob'
  'table'
  'queue'
]: {
  name: 'dns-${service}'
  params: {
    zoneName: 'privatelink.${service}.${storageSuffix}'
    existingZoneId: givenZones[service]
    vnetId: vnetId
    clientVnetId: clientVnetId
    tags: tags
  }
}]

module appZone 'modules/private-dns.bicep' = {
  name: 'dns-sites'
  params: {
    zoneName: 'privatelink.azurewebsites.net'
    existingZoneId: givenZones.sites
    vnetId: vnetId
    clientVnetId: clientVnetId
    tags: tags
  }
}

module storageEndpoints 'modules/private-endpoint.bicep' = [for (service, i) in [
  'blob'
  'table'
  'queue'
]: {
  name: 'pe-${service}'
  params: {
    location: location
    name: '${storageName}-${service}-pe'
    subnetId: privateEndpointSubnetId
    targetId: storage.outputs.id
    groupId: service
    dnsZoneId: storageZones[i].outputs.zoneId
    tags: tags
  }
}]

module appEndpoint 'modules/private-endpoint.bicep' = {
  name: 'pe-sites'
  params: {
    location: location
    name: '${appName}-sites-pe'
    subnetId: privateEndpointSubnetId
    targetId: functionApp.outputs.id
    groupId: 'sites'
    dnsZoneId: appZone.outputs.zoneId
    tags: tags
  }
}

@description('The registry\'s login server: docker login <this>.')
output loginServer string = functionApp.outputs.defaultHostName
output functionAppName string = functionApp.outputs.name
output storageAccountName string = storageName
output identityClientId string = identity.properties.clientId
@description('Where the registry\'s outbound traffic comes from: allow-list it at upstream registries and webhook receivers.')
output egressAddress string = ownNetwork ? network.outputs.egressAddress : ''
output deploymentContainer string = deploymentContainer
