// The Flex Consumption plan and the function app that serves Berth: Linux, Python, a
// user-assigned identity for everything (storage, telemetry, Key Vault), VNet-integrated,
// reachable only through its private endpoint unless publicNetworkAccess says otherwise.

param location string
param name string
param identityId string
param identityClientId string

@description('The identity the deployment package is written and read with (not the registry\'s).')
param deploymentIdentityId string
param storageAccountName string
param storageBlobEndpoint string
param deploymentContainer string
param integrationSubnetId string
param appInsightsConnectionString string

@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

@description('Spread instances over availability zones (Flex Consumption: only in regions that offer it).')
param zoneRedundant bool

param pythonVersion string
param maximumInstanceCount int
param instanceMemoryMB int

@description('HTTP requests one instance takes at once before the platform adds instances.')
param httpPerInstanceConcurrency int

@description('Largest request body in bytes the platform lets through (a layer pushed in one request).')
param requestBodySizeLimit int

@description('BERTH_* settings of the registry.')
param registrySettings object

param tags object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists only in some regions; set zoneRedundant=true there
  name: '${name}-plan'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

var platformSettings = {
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_ENABLE_INIT_INDEXING: '1'
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(requestBodySizeLimit)
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: publicNetworkAccess is a parameter; main.bicep defaults it to Disabled (tests assert it)
  // checkov:skip=CKV_AZURE_17: registry clients (docker, containerd, oras) authenticate with bearer tokens, not client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales out on demand; always-ready instances are a cost choice, not a default
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no App Service health check; the platform replaces failed instances
  name: name
  location: location
  // azd deploys the service `registry` (azure.yaml) to the app carrying this tag.
  tags: union(tags, {
    'azd-service-name': 'registry'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
      '${deploymentIdentityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: publicNetworkAccess
    virtualNetworkSubnetId: integrationSubnetId
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(union(platformSettings, registrySettings)): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: deploymentIdentityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

resource basicPublishingFtp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource basicPublishingScm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = app.id
output name string = app.name
output defaultHostName string = app.properties.defaultHostName
